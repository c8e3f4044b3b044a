"""What is kept: the grandfather-father-son policy (retention), `doit prune` on S3 and
LOCAL_KEEP on the local disk (prune, local).
"""

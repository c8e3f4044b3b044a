"""Where archives live besides the local disk: S3 uploads, resume, verification and the sweep
(s3), reading an archive back as a stream (reader), finding its zstd frames (zstdframes).
"""

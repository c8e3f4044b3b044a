"""The work behind `doit backup`: the stages (steps), runs and receipts (runs), the tar stream
and the two-piece archive (tarstream, archive), write-out pacing, the lock, child processes.
"""

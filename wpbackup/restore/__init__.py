"""The work behind `doit restore` and `doit verify`: plan, check and apply a restore
(restore), the database and files sides with their undo (dbswap, fileswap), the member check
restore and verify share (members), and verification (verify).
"""

"""Talking to MariaDB/MySQL through its own clients: option files, dumps, queries and
sessions (mysql), the login and its privileges (dblogin), triggers/views/routines read back
(dbobjects). Used by backup and restore alike.
"""

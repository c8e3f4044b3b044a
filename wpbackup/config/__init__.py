"""What the operator wrote: `.env` and the environment (settings), sites.json (sites), each
site's wp-config.php read the way PHP reads it (wpconfig). Calls only the shared modules.
"""

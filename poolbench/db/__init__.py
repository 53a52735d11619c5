"""The database edge both platforms share (psycopg2): the monitor probe and the app-role SQL."""

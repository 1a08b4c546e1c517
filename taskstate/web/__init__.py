"""The web side: publishing committed changes, channels, event streams, views and the
JSON form. It never imports the Dramatiq side."""

"""The Dramatiq side: the middleware's hooks, progress from inside an actor and the
background writer. It never imports the web side."""

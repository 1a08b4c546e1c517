"""Helpers the tests share: processes, the SSE client, the TCP proxy, fault tools, Pushpin."""

"""What both sides build on: statuses, settings, the ``Task`` row and its writes, groups,
owner control and the policy. It imports neither side."""

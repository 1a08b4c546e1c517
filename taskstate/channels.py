"""The channel manager and channel names at the paths projects write in settings;
defined in :mod:`taskstate.web.channels`."""

from taskstate.web.channels import TaskstateChannelManager, site_namespace, user_channel

__all__ = ["TaskstateChannelManager", "site_namespace", "user_channel"]

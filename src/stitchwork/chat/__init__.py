"""Chat: the ``ChatProvider`` port, its adapters (console, Slack/Mattermost, Discord) and the
bridge that maps parsed chat commands to the services."""

#!/bin/sh
# The suite's RABBITMQCTL (harness.py sets it): rabbitmqctl told where the
# private node's enabled_plugins file is, so that the CLI knows the
# commands of its plugins (`list_stomp_connections`, used by
# x_queue_name.py); the suite adds `-n <node>` and the command.
exec "${HARNESS_RABBITMQCTL:-rabbitmqctl}" --enabled-plugins-file "${HARNESS_ENABLED_PLUGINS_FILE:?}" "$@"

#!/bin/sh
# The Airflow image's entrypoint, shaped like the official image's: `IMAGE scheduler`
# runs `airflow scheduler`; a program name (bash, python, airflow, stash...) or a path
# runs as given, as the official Helm chart and compose file expect.
set -eu
case "${1:-}" in
  "") exec airflow --help ;;
  bash | sh | python | python3 | airflow | stash | stash-agent | restic | /*) exec "$@" ;;
  *) exec airflow "$@" ;;
esac

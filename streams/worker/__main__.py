"""Run the routing worker: `python -m streams.worker`."""

from streams.worker.app import main

main()

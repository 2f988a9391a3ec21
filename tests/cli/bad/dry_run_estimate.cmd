run scenarios/default.yaml --dry-run --max-memory 64GiB --max-time 3600s

run scenarios/deepseek-v3-train-256xh800.yaml --max-memory 64MiB --max-time 1s

run scenarios/default.yaml --max-memory 12XB --max-time 5

run scenarios/all-to-all-2x8-h100.yaml --dump-topology /dev/full

run scenarios/mixtral-8x7b-decode.yaml --trace /dev/full

sweep tests/cli/sweep/small.yaml -o @TMP@/s --resume --force

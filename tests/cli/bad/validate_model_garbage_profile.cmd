validate-model tests/cli/bad/profiles/garbage.yaml tests/cli/bad/calib_ok

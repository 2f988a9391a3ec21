calibrate tests/cli/bad/calib_ok -o /dev/full

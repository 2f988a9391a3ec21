calibrate tests/cli/bad/calib_ok --points /dev/full

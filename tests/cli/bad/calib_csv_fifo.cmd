calibrate @TMP@/fifodir

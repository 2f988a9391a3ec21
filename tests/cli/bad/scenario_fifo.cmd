validate @TMP@/fifo

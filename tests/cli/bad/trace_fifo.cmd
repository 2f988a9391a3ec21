validate @FILE@ --set routing.trace=@TMP@/fifo

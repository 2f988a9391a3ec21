validate @FILE@ --set routing.trace=@TMP@/dir

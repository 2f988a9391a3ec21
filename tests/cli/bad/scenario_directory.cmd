validate @TMP@/dir

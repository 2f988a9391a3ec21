run @FILE@ --seed -1

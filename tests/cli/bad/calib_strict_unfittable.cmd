calibrate @CASE@ --strict

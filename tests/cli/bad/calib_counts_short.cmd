calibrate @CASE@

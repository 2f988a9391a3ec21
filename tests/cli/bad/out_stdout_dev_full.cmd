describe gpus

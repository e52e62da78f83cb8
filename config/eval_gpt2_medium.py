# evaluate OpenAI's GPT-2 (350M) on OpenWebText's val split
batch_size = 8
eval_iters = 500  # use more for a tighter estimate
eval_only = True
wandb_log = False
init_from = 'gpt2-medium'

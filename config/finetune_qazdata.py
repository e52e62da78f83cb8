# finetune OpenAI's GPT-2 on KazQAD tokenized with GPT-2's BPE (data/qazdata/prepare.py)

out_dir = 'out-qazdata'
eval_interval = 50
eval_iters = 40
log_interval = 5
wandb_log = False
wandb_project = 'qazdata'
wandb_run_name = 'ft-gpt2'

dataset = 'qazdata'
init_from = 'gpt2'  # or gpt2-medium, gpt2-large, gpt2-xl, or a local Hugging Face GPT-2 folder

# one checkpoint file (GPT-2 sizes are large): best.pt, the lowest val loss
keep_checkpoints = 'best'

# 1 batch * 32 micro-steps * 512 tokens = 16,384 tokens per step
batch_size = 1
gradient_accumulation_steps = 32
block_size = 512  # within GPT-2's 1024
dropout = 0.1
max_iters = 300

# a small constant learning rate: the pretrained weights only need nudging
learning_rate = 3e-5
decay_lr = False

# step 1 of `make qa`: a small GPT pretrained on KazQAD's training passages with the Kazakh BPE
# (data/qazdata_bpe/prepare.py --vocab_size=2048: a quarter of the default vocabulary reads better
# after finetuning), with a context that holds a passage and the question twice (384 tokens);
# sized for a 2-core CPU (BENCHMARKS.md has the measurements behind these settings)

out_dir = 'out-qa-pretrain'
eval_interval = 200
eval_iters = 20
log_interval = 20

dataset = 'qazdata_bpe'
gradient_accumulation_steps = 1
batch_size = 8
block_size = 384

n_layer = 6
n_head = 4
n_embd = 128
dropout = 0.0
# GPT-2's architecture: the newer default (rotary positions, ReLU squared, QK-norm) read worse after
# finetuning on this pipeline (BENCHMARKS.md)
position_encoding = 'learned'
mlp_activation = 'gelu'
qk_norm = False

muon_lr = 0.01
learning_rate = 3e-3  # AdamW's
max_iters = 600
lr_decay_iters = 600
min_lr = 3e-4
beta2 = 0.99
warmup_iters = 50

device = 'cpu'
compile = False

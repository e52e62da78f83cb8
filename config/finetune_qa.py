# step 2 of `make qa`: the pretrained model (out-qa-pretrain) finetuned on question-answering
# examples (data/qazdata_qa/prepare.py, 384 tokens each): the loss counts answer tokens only.
# 384 tokens of the 2,048-token BPE hold the question twice and enough of the passage that for most
# questions the answer is in what the reader sees. BENCHMARKS.md has the runs behind these settings.

out_dir = 'out-qa'
init_from = 'out-qa-pretrain'  # an earlier run of this repo: its best.pt, a new optimizer state
eval_interval = 500
eval_iters = 20
log_interval = 20
# the last checkpoint, not the lowest val loss: val loss on held-out answers does not track EM/F1 here
keep_checkpoints = 'latest'

dataset = 'qazdata_qa'
span_head = True  # reading questions are answered by pointing at the span in the passage (eval_qa.py)
gradient_accumulation_steps = 1
batch_size = 8
block_size = 384

dropout = 0.0
muon_lr = 0.01
learning_rate = 3e-3
max_iters = 3000
lr_decay_iters = 3000
min_lr = 3e-4
beta2 = 0.99
warmup_iters = 50

device = 'cpu'
compile = False

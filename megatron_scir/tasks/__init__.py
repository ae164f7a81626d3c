"""Small instruction tasks whose correct answer a program grades (oracle tasks for the demo).

:mod:`megatron_scir.tasks.arithmetic`: integer addition ("What is 3 + 4?" → "7") in a closed
world of facts, its grader hook ``megatron_scir.tasks.arithmetic:grade``, a short pairwise judge
template and a generator of the whole file set (tokenizer, seed SFT data with misconceptions,
seed judge data with wrong verdicts, the iteration prompt pool, evaluation prompts and labelled
pairs). Nothing here imports torch.
"""

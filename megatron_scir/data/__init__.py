"""Data: tokenizers, chat formats, judge formats, JSONL records, pairs, layout, DataModules.

Files and formats are described in docs/data.md. Nothing here imports Megatron-Core. Names are
imported on first use (PEP 562), so ``megatron_scir.data.stream`` or ``.records`` can be used
without importing torch.
"""

from __future__ import annotations

from megatron_scir._lazy import lazy_exports

_EXPORTS = {
    "MicroBatch": "batch",
    "SftBatch": "batch",
    "ChatFormat": "chat",
    "PLAIN_CHAT_TEMPLATE": "chat",
    "collate_examples": "collate",
    "collate_pairs": "collate",
    "pad_to_common_length": "collate",
    "ScirDataModule": "datamodule",
    "SequenceEncoder": "encode",
    "TruncationStats": "truncation",
    "JUDGE_FORMATS": "judges",
    "JudgeFormat": "judges",
    "judge_format": "judges",
    "MicroBatchLayout": "layout",
    "DataError": "errors",
    "RecordError": "errors",
    "SingleTokenError": "errors",
    "ReadReport": "jsonl",
    "atomic_open": "stream",
    "read_records": "jsonl",
    "write_records": "jsonl",
    "PairBuildReport": "pairs",
    "build_pairs": "pairs",
    "GenerationRecord": "records",
    "PairRecord": "records",
    "PairwiseJudgeRecord": "records",
    "PointwiseJudgeRecord": "records",
    "PromptRecord": "records",
    "SftRecord": "records",
    "record_to_json": "records",
    "MicroBatchSampler": "sampler",
    "SftDataModule": "sft",
    "ChunkedJsonlWriter": "stream",
    "HFTokenizer": "tokenizer",
    "SentencePieceTokenizer": "tokenizer",
    "Tokenizer": "tokenizer",
    "build_tokenizer": "tokenizer",
    "check_tokenizer_fits_model": "tokenizer",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""Training data: read public medical dialogue files in any known layout and prepare conversation JSONL.

    readers.py   bytes -> text (UTF-8, UTF-8-BOM, GB18030, UTF-16) -> records of JSON Lines, JSON and CSV
    formats.py   one record of any layout -> validated OpenAI-shaped messages; --columns/--roles mappings
    prepare.py   the pipeline behind data/prepare_data.py: validate, de-duplicate, filter, merge, write, report
    conversations.py  prepared conversations read back and split into train/held-out (trainer, evaluator)
    config.py    DataConfig (data/prepare_data.py's flags)
"""

from medqwen.data.formats import (
                                  PLACEHOLDER,
                                  QA_KEYS,
                                  ROLES,
                                  SHAREGPT_ROLES,
                                  Mapping,
                                  as_text,
                                  check_text,
                                  convert_record,
                                  dedup_key,
                                  detect_format,
                                  find_placeholder,
                                  normalise,
                                  parse_mapping,
                                  validate,
)
from medqwen.data.prepare import (
                                  DROP_REASONS,
                                  IDENTITY_PROBES,
                                  INVALID_REASONS,
                                  FileResult,
                                  InputSpec,
                                  build_stats,
                                  load_file,
                                  output_paths,
                                  parse_inputs,
                                  prepare,
                                  remove_stale_temporaries,
                                  summary_table,
)
from medqwen.data.readers import (
                                  CSV_SUFFIXES,
                                  DATA_SUFFIXES,
                                  MAX_CSV_RECORD_LINES,
                                  DataError,
                                  RecordError,
                                  detect_encoding,
                                  iter_csv,
                                  iter_records,
                                  read_lines,
)

__all__ = ["CSV_SUFFIXES", "DATA_SUFFIXES", "DROP_REASONS", "IDENTITY_PROBES", "INVALID_REASONS",
           "MAX_CSV_RECORD_LINES", "PLACEHOLDER", "QA_KEYS", "ROLES", "SHAREGPT_ROLES", "DataError", "FileResult",
           "InputSpec", "Mapping", "RecordError", "as_text", "build_stats", "check_text", "convert_record",
           "dedup_key", "detect_encoding", "detect_format", "find_placeholder", "iter_csv", "iter_records",
           "load_file", "normalise", "output_paths", "parse_inputs", "parse_mapping", "prepare", "read_lines",
           "remove_stale_temporaries", "summary_table", "validate"]
from medqwen.data.conversations import read_conversations, split_conversations

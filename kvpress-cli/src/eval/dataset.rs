//! Reading evaluation rows from the files users have: kvpress-style parquet (the HF datasets
//! kvpress evaluates on are parquet), JSON Lines, JSON arrays and CSV, from one file or from a
//! directory of splits (the HF layout `<dir>/<data_dir>/test-00000-of-00001.parquet`).
//!
//! Columns follow kvpress: `context`, `question`, `answer_prefix`, `answer` or `answers` (one
//! string or a list), `task`, `max_new_tokens`; every other column is kept in
//! [`Sample::extra`] for the metrics that need it (`all_classes`, `length`, `needle`, ...).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{Map, Value};

use super::metrics::pyliteral::{PyValue, eval_literal};
use super::sample::Sample;

/// A dataset file that cannot be read as evaluation rows.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file or directory cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// What was read.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The file's content is not valid for its format.
    #[error("{path}: {detail}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the row when known.
        detail: String,
    },
    /// A directory without any dataset file.
    #[error("{0}: no .parquet, .jsonl, .json or .csv file found")]
    NoFiles(PathBuf),
}

type Result<T> = std::result::Result<T, DataError>;

/// The rows of `path` (a file, or a directory searched recursively; with `data_dir`, its
/// sub-directory of that name when there is one). In a directory, files whose name starts
/// with `test` (the split kvpress evaluates) are read if there are any, else every file.
pub fn read_samples(path: &Path, data_dir: Option<&str>) -> Result<Vec<Sample>> {
    let files = dataset_files(path, data_dir)?;
    let mut samples = Vec::new();
    for file in &files {
        for (index, row) in read_rows(file)?.into_iter().enumerate() {
            let sample = sample_from_row(row).map_err(|detail| DataError::Format {
                path: file.clone(),
                detail: format!("row {}: {detail}", index + 1),
            })?;
            samples.push(sample);
        }
    }
    Ok(samples)
}

/// The dataset files under `path`, sorted.
fn dataset_files(path: &Path, data_dir: Option<&str>) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        if !path.exists() {
            return Err(DataError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let root = match data_dir.map(|d| path.join(d)) {
        Some(sub) if sub.is_dir() => sub,
        _ => path.to_path_buf(),
    };
    let mut files = Vec::new();
    collect_files(&root, &mut files)?;
    files.sort();
    let test: Vec<PathBuf> = files
        .iter()
        .filter(|f| {
            f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("test"))
        })
        .cloned()
        .collect();
    let chosen = if test.is_empty() { files } else { test };
    if chosen.is_empty() {
        return Err(DataError::NoFiles(root));
    }
    Ok(chosen)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let io = |source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else if Format::of(&path).is_some() {
            out.push(path);
        }
    }
    Ok(())
}

/// The file formats read, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Parquet,
    JsonLines,
    Json,
    Csv,
}

impl Format {
    fn of(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "parquet" => Some(Self::Parquet),
            "jsonl" | "ndjson" => Some(Self::JsonLines),
            "json" => Some(Self::Json),
            "csv" => Some(Self::Csv),
            _ => None,
        }
    }
}

/// Every row of one file as a JSON object.
pub(crate) fn read_rows(path: &Path) -> Result<Vec<Map<String, Value>>> {
    let format = |detail: String| DataError::Format {
        path: path.to_path_buf(),
        detail,
    };
    let Some(kind) = Format::of(path) else {
        return Err(format(
            "unknown format: expected .parquet, .jsonl, .json or .csv".into(),
        ));
    };
    let text = || {
        fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    match kind {
        Format::Parquet => read_parquet(path),
        Format::JsonLines => text()?
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, line)| match serde_json::from_str(line) {
                Ok(Value::Object(map)) => Ok(map),
                Ok(_) => Err(format(format!("line {}: not a JSON object", i + 1))),
                Err(e) => Err(format(format!("line {}: {e}", i + 1))),
            })
            .collect(),
        Format::Json => match serde_json::from_str(&text()?) {
            Ok(Value::Array(rows)) => rows
                .into_iter()
                .enumerate()
                .map(|(i, row)| match row {
                    Value::Object(map) => Ok(map),
                    _ => Err(format(format!("element {}: not a JSON object", i + 1))),
                })
                .collect(),
            Ok(_) => Err(format("expected a JSON array of row objects".into())),
            Err(e) => Err(format(e.to_string())),
        },
        Format::Csv => read_csv(path),
    }
}

fn read_parquet(path: &Path) -> Result<Vec<Map<String, Value>>> {
    let format = |detail: String| DataError::Format {
        path: path.to_path_buf(),
        detail,
    };
    let file = fs::File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let reader = SerializedFileReader::new(file).map_err(|e| format(e.to_string()))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| format(e.to_string()))?;
    rows.enumerate()
        .map(|(i, row)| {
            let row = row.map_err(|e| format(format!("row {}: {e}", i + 1)))?;
            Ok(row
                .get_column_iter()
                .map(|(name, field)| (name.clone(), field_to_json(field)))
                .collect())
        })
        .collect()
}

/// A parquet value as JSON (lists and structs nested, bytes as UTF-8 text when they are).
fn field_to_json(field: &Field) -> Value {
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(v) => Value::from(*v),
        Field::Short(v) => Value::from(*v),
        Field::Int(v) => Value::from(*v),
        Field::Long(v) => Value::from(*v),
        Field::UByte(v) => Value::from(*v),
        Field::UShort(v) => Value::from(*v),
        Field::UInt(v) => Value::from(*v),
        Field::ULong(v) => Value::from(*v),
        Field::Float(v) => Value::from(*v),
        Field::Double(v) => Value::from(*v),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => Value::String(String::from_utf8_lossy(b.data()).into_owned()),
        Field::ListInternal(list) => {
            Value::Array(list.elements().iter().map(field_to_json).collect())
        }
        Field::Group(row) => Value::Object(
            row.get_column_iter()
                .map(|(k, v)| (k.clone(), field_to_json(v)))
                .collect(),
        ),
        Field::MapInternal(map) => Value::Array(
            map.entries()
                .iter()
                .map(|(k, v)| Value::Array(vec![field_to_json(k), field_to_json(v)]))
                .collect(),
        ),
        other => Value::String(other.to_string()),
    }
}

fn read_csv(path: &Path) -> Result<Vec<Map<String, Value>>> {
    let format = |detail: String| DataError::Format {
        path: path.to_path_buf(),
        detail,
    };
    let mut reader = csv::Reader::from_path(path).map_err(|e| format(e.to_string()))?;
    let headers = reader.headers().map_err(|e| format(e.to_string()))?.clone();
    reader
        .records()
        .enumerate()
        .map(|(i, record)| {
            let record = record.map_err(|e| format(format!("row {}: {e}", i + 1)))?;
            Ok(headers
                .iter()
                .zip(record.iter())
                .map(|(k, v)| (k.to_string(), csv_cell(v)))
                .collect())
        })
        .collect()
}

/// A CSV cell: a list written as JSON or as a Python literal (pandas writes lists with
/// `repr`) becomes a list, anything else stays text.
fn csv_cell(cell: &str) -> Value {
    let t = cell.trim();
    if t.starts_with('[') && t.ends_with(']') {
        if let Ok(v) = serde_json::from_str::<Value>(t) {
            return v;
        }
        if let Some(v) = eval_literal(t) {
            return python_to_json(v);
        }
    }
    Value::String(cell.to_string())
}

/// A Python literal as JSON (tuples and sets as arrays, dicts with text keys as objects).
fn python_to_json(value: PyValue) -> Value {
    match value {
        PyValue::None => Value::Null,
        PyValue::Bool(b) => Value::Bool(b),
        PyValue::Int(i) => {
            i64::try_from(i).map_or_else(|_| Value::String(i.to_string()), Value::from)
        }
        PyValue::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        PyValue::Str(s) => Value::String(s),
        PyValue::Bytes(b) => Value::String(String::from_utf8_lossy(&b).into_owned()),
        PyValue::List(items) | PyValue::Tuple(items) | PyValue::Set(items) => {
            Value::Array(items.into_iter().map(python_to_json).collect())
        }
        PyValue::Dict(entries) => Value::Object(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let key = match python_to_json(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, python_to_json(v))
                })
                .collect(),
        ),
    }
}

/// A JSON row as a [`Sample`]; `Err` names the missing or ill-typed column.
pub fn sample_from_row(mut row: Map<String, Value>) -> std::result::Result<Sample, String> {
    let mut text = |name: &str, required: bool| match row.remove(name) {
        Some(Value::String(s)) => Ok(s),
        Some(Value::Null) | None if !required => Ok(String::new()),
        None | Some(Value::Null) => Err(format!("no `{name}` column")),
        Some(other) => Err(format!("`{name}` is not text: {other}")),
    };
    let context = text("context", true)?;
    let question = text("question", false)?;
    let answer_prefix = text("answer_prefix", false)?;
    let task = text("task", false)?;
    let answers = match row.remove("answers").or_else(|| row.remove("answer")) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => items.into_iter().map(value_text).collect(),
        Some(other) => vec![value_text(other)],
    };
    let max_new_tokens = match row.remove("max_new_tokens") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                    .map(|f| f as u64)
            })
            .ok_or_else(|| format!("`max_new_tokens` is not a count: {n}"))?
            as usize,
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| format!("`max_new_tokens` is not a count: {s:?}"))?,
        Some(other) => return Err(format!("`max_new_tokens` is not a count: {other}")),
    };
    Ok(Sample {
        context,
        question,
        answer_prefix,
        answers,
        task,
        max_new_tokens,
        extra: row.into_iter().collect::<BTreeMap<_, _>>(),
    })
}

/// A JSON value as answer text (strings unquoted).
fn value_text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// Writes `samples` in kvpress's column layout, as parquet (`answer` a list of strings,
/// `max_new_tokens` an int64, other columns text: JSON for non-string values) or, for a
/// `.jsonl` path, as JSON Lines.
pub fn write_samples(path: &Path, samples: &[Sample]) -> Result<()> {
    let format = |detail: String| DataError::Format {
        path: path.to_path_buf(),
        detail,
    };
    match Format::of(path) {
        Some(Format::Parquet) => write_parquet(path, samples).map_err(|e| format(e.to_string())),
        Some(Format::JsonLines) => {
            let mut text = String::new();
            for s in samples {
                let mut row = Map::new();
                row.insert("context".into(), Value::String(s.context.clone()));
                row.insert("question".into(), Value::String(s.question.clone()));
                row.insert(
                    "answer_prefix".into(),
                    Value::String(s.answer_prefix.clone()),
                );
                row.insert("answer".into(), serde_json::json!(s.answers));
                row.insert("task".into(), Value::String(s.task.clone()));
                row.insert("max_new_tokens".into(), serde_json::json!(s.max_new_tokens));
                row.extend(s.extra.clone());
                text.push_str(&Value::Object(row).to_string());
                text.push('\n');
            }
            fs::write(path, text).map_err(|source| DataError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
        _ => Err(format("write .parquet or .jsonl".into())),
    }
}

fn write_parquet(path: &Path, samples: &[Sample]) -> parquet::errors::Result<()> {
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use std::sync::Arc;

    let extra: std::collections::BTreeSet<&str> = samples
        .iter()
        .flat_map(|s| s.extra.keys().map(String::as_str))
        .collect();
    if let Some(bad) = extra.iter().find(|k| {
        !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || [
                "context",
                "question",
                "answer_prefix",
                "answer",
                "task",
                "max_new_tokens",
            ]
            .contains(k)
    }) {
        return Err(parquet::errors::ParquetError::General(format!(
            "column name {bad:?} cannot be written"
        )));
    }
    let mut schema = String::from(
        "message schema {
           REQUIRED BYTE_ARRAY context (UTF8);
           REQUIRED BYTE_ARRAY question (UTF8);
           REQUIRED BYTE_ARRAY answer_prefix (UTF8);
           OPTIONAL group answer (LIST) { REPEATED group list { OPTIONAL BYTE_ARRAY element (UTF8); } }
           REQUIRED BYTE_ARRAY task (UTF8);
           REQUIRED INT64 max_new_tokens;",
    );
    for k in &extra {
        schema.push_str(&format!(" OPTIONAL BYTE_ARRAY {k} (UTF8);"));
    }
    schema.push('}');
    let schema = Arc::new(parse_message_type(&schema)?);
    let file = fs::File::create(path)?;
    let mut writer =
        SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build()))?;
    let mut group = writer.next_row_group()?;
    let mut column = |values: Vec<ByteArray>, def: Option<Vec<i16>>, rep: Option<Vec<i16>>| {
        let Some(mut col) = group.next_column()? else {
            return Err(parquet::errors::ParquetError::General(
                "missing column".into(),
            ));
        };
        col.typed::<ByteArrayType>()
            .write_batch(&values, def.as_deref(), rep.as_deref())?;
        col.close()
    };
    let text = |f: &dyn Fn(&Sample) -> &str| -> Vec<ByteArray> {
        samples.iter().map(|s| ByteArray::from(f(s))).collect()
    };
    column(text(&|s| &s.context), None, None)?;
    column(text(&|s| &s.question), None, None)?;
    column(text(&|s| &s.answer_prefix), None, None)?;
    // a list column: definition level 3 = element present, 1 = empty list; repetition level 1
    // continues the row's list
    let (mut values, mut def, mut rep) = (Vec::new(), Vec::new(), Vec::new());
    for s in samples {
        if s.answers.is_empty() {
            def.push(1);
            rep.push(0);
        }
        for (i, a) in s.answers.iter().enumerate() {
            values.push(ByteArray::from(a.as_str()));
            def.push(3);
            rep.push(i16::from(i > 0));
        }
    }
    column(values, Some(def), Some(rep))?;
    column(text(&|s| &s.task), None, None)?;
    let Some(mut col) = group.next_column()? else {
        return Err(parquet::errors::ParquetError::General(
            "missing column".into(),
        ));
    };
    let counts: Vec<i64> = samples.iter().map(|s| s.max_new_tokens as i64).collect();
    col.typed::<Int64Type>().write_batch(&counts, None, None)?;
    col.close()?;
    for k in &extra {
        let present: Vec<ByteArray> = samples
            .iter()
            .filter_map(|s| s.extra.get(*k))
            .filter(|v| !v.is_null())
            .map(|v| match v {
                Value::String(t) => ByteArray::from(t.as_str()),
                other => ByteArray::from(other.to_string().as_str()),
            })
            .collect();
        let def: Vec<i16> = samples
            .iter()
            .map(|s| i16::from(s.extra.get(*k).is_some_and(|v| !v.is_null())))
            .collect();
        let Some(mut col) = group.next_column()? else {
            return Err(parquet::errors::ParquetError::General(
                "missing column".into(),
            ));
        };
        col.typed::<ByteArrayType>()
            .write_batch(&present, Some(&def), None)?;
        col.close()?;
    }
    group.close()?;
    writer.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parquet_in_kvpress_layout() {
        let dir = tempfile::tempdir().expect("tmp");
        let split = dir.path().join("4096");
        fs::create_dir(&split).expect("mkdir");
        let sample = |context: &str, answers: &[&str], task: &str, n: usize| Sample {
            context: context.into(),
            question: format!("{task}?"),
            answer_prefix: " A:".into(),
            answers: answers.iter().map(|a| a.to_string()).collect(),
            task: task.into(),
            max_new_tokens: n,
            extra: BTreeMap::new(),
        };
        let written = vec![
            sample("ctx one", &["x", "y"], "niah_single_1", 128),
            sample("ctx two", &["z"], "vt", 30),
        ];
        write_samples(&split.join("test-00000-of-00001.parquet"), &written).expect("write");
        fs::write(split.join("notes.txt"), "ignored").expect("write");
        let rows = read_samples(dir.path(), Some("4096")).expect("read");
        assert_eq!(rows, written);

        // dataset-specific columns survive as text (JSON for non-strings)
        let mut with_extra = written.clone();
        with_extra[0]
            .extra
            .insert("needle".into(), Value::String("n".into()));
        with_extra[0]
            .extra
            .insert("needle_depth".into(), serde_json::json!(50));
        with_extra[1]
            .extra
            .insert("needle".into(), Value::String("m".into()));
        let path = dir.path().join("extra.jsonl");
        write_samples(&path, &with_extra).expect("write jsonl");
        assert_eq!(read_samples(&path, None).expect("read jsonl"), with_extra);
        let path = dir.path().join("extra.parquet");
        write_samples(&path, &with_extra).expect("write parquet");
        let back = read_samples(&path, None).expect("read parquet");
        assert_eq!(back[0].extra["needle_depth"], serde_json::json!("50"));
        assert_eq!(back[1].extra["needle_depth"], Value::Null);
        assert_eq!(back[1].extra["needle"], serde_json::json!("m"));
    }

    #[test]
    fn jsonl_json_and_csv() {
        let dir = tempfile::tempdir().expect("tmp");
        let jsonl = dir.path().join("a.jsonl");
        fs::write(
            &jsonl,
            "{\"context\":\"c\",\"question\":\"q\",\"answers\":[\"a\",1],\"all_classes\":[\"x\"],\"max_new_tokens\":5}\n\n",
        )
        .expect("write");
        let rows = read_samples(&jsonl, None).expect("jsonl");
        assert_eq!(rows[0].answers, vec!["a", "1"]);
        assert_eq!(rows[0].extra["all_classes"], serde_json::json!(["x"]));
        assert_eq!(rows[0].answer_prefix, "");

        let json = dir.path().join("b.json");
        fs::write(&json, "[{\"context\":\"c\",\"answer\":\"only\"}]").expect("write");
        assert_eq!(
            read_samples(&json, None).expect("json")[0].answers,
            vec!["only"]
        );

        let csv = dir.path().join("c.csv");
        fs::write(
            &csv,
            "context,question,answer,task,max_new_tokens,length\n\"a, long\",q,\"['it\\'s', \"\"b\"\"]\",t,7,3000\n",
        )
        .expect("write");
        // pandas writes python lists; the doubled quote is CSV escaping
        let rows = read_samples(&csv, None).expect("csv");
        assert_eq!(rows[0].context, "a, long");
        assert_eq!(rows[0].max_new_tokens, 7);
        assert_eq!(rows[0].extra["length"], serde_json::json!("3000"));
        assert_eq!(rows[0].answers, vec!["it's", "b"]);
    }

    #[test]
    fn python_lists_in_csv_cells() {
        assert_eq!(
            csv_cell(r#"['a', "b's", 3, None, 'c\'d']"#),
            serde_json::json!(["a", "b's", 3, null, "c'd"])
        );
        assert_eq!(csv_cell("[]"), serde_json::json!([]));
        assert_eq!(csv_cell("[a]"), serde_json::json!("[a]"));
        assert_eq!(csv_cell("['a'"), serde_json::json!("['a'"));
        assert_eq!(csv_cell("plain"), serde_json::json!("plain"));
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let bad = dir.path().join("bad.jsonl");
        fs::write(&bad, "{\"question\":\"q\"}\n").expect("write");
        let e = read_samples(&bad, None)
            .expect_err("no context")
            .to_string();
        assert!(
            e.contains("bad.jsonl") && e.contains("row 1") && e.contains("context"),
            "{e}"
        );
        let broken = dir.path().join("broken.parquet");
        fs::write(&broken, b"PAR1 not really").expect("write");
        let e = read_samples(&broken, None).expect_err("broken").to_string();
        assert!(e.contains("broken.parquet"), "{e}");
        let empty = tempfile::tempdir().expect("tmp");
        assert!(matches!(
            read_samples(empty.path(), None),
            Err(DataError::NoFiles(_))
        ));
        assert!(read_samples(&dir.path().join("missing.csv"), None).is_err());
    }
}

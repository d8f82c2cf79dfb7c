//! `suho audit export`: a user's records as CSV or JSON lines, one record per row, in the
//! store's order (time, topic, partition, offset).

use std::io::Write;

use crate::store::AuditRecord;

/// Output formats of the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// RFC 4180 CSV with a header row; the event is one JSON text column.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

impl std::str::FromStr for ExportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "csv" => Ok(ExportFormat::Csv),
            "jsonl" => Ok(ExportFormat::Jsonl),
            other => Err(format!("--format: {other:?} is not csv or jsonl")),
        }
    }
}

/// The CSV header.
pub const CSV_HEADER: &str = "kafka_ts,topic,partition,offset,user_id,event_type,event_id,event";

fn csv_field(out: &mut String, value: &str) {
    if value.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

/// The event column: the JSON value, or for a record that is not JSON its bytes as a JSON
/// string (lossy UTF-8) under `{"unparseable": ...}`.
fn event_text(r: &AuditRecord) -> String {
    match &r.payload {
        Some(p) => p.to_string(),
        None => serde_json::json!({
            "unparseable": String::from_utf8_lossy(r.raw.as_deref().unwrap_or_default())
        })
        .to_string(),
    }
}

/// Writes `records` to `out` in `format`.
///
/// # Errors
/// Writing failed.
pub fn write_export(
    out: &mut impl Write,
    records: &[AuditRecord],
    format: ExportFormat,
) -> std::io::Result<()> {
    match format {
        ExportFormat::Csv => {
            writeln!(out, "{CSV_HEADER}")?;
            for r in records {
                let mut line = format!("{},", r.kafka_ts);
                for (i, v) in [
                    r.topic.clone(),
                    r.partition.to_string(),
                    r.offset.to_string(),
                    r.user_id.clone(),
                    r.event_type.clone().unwrap_or_default(),
                    r.event_id.clone().unwrap_or_default(),
                    event_text(r),
                ]
                .iter()
                .enumerate()
                {
                    if i > 0 {
                        line.push(',');
                    }
                    csv_field(&mut line, v);
                }
                writeln!(out, "{line}")?;
            }
        }
        ExportFormat::Jsonl => {
            for r in records {
                let line = serde_json::json!({
                    "kafka_ts": r.kafka_ts,
                    "topic": r.topic,
                    "partition": r.partition,
                    "offset": r.offset,
                    "user_id": r.user_id,
                    "event_type": r.event_type,
                    "event_id": r.event_id,
                    "event": serde_json::from_str::<serde_json::Value>(&event_text(r))
                        .unwrap_or(serde_json::Value::Null),
                });
                writeln!(out, "{line}")?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(payload: Option<serde_json::Value>, raw: Option<&[u8]>) -> AuditRecord {
        AuditRecord {
            topic: "user.trades".into(),
            partition: 2,
            offset: 7,
            user_id: "usr_1".into(),
            event_type: Some("TRADE_EXECUTED".into()),
            event_id: Some("exec_1".into()),
            kafka_ts: 1_700_000_000_000,
            payload,
            raw: raw.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn csv_quotes_the_event_and_jsonl_nests_it() {
        let records = [
            rec(Some(serde_json::json!({"a": "x,\"y\""})), None),
            rec(None, Some(b"\xffgarbage")),
        ];
        let mut csv = Vec::new();
        write_export(&mut csv, &records, ExportFormat::Csv).unwrap();
        let csv = String::from_utf8(csv).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(
            lines[1],
            r#"1700000000000,user.trades,2,7,usr_1,TRADE_EXECUTED,exec_1,"{""a"":""x,\""y\""""}""#
        );
        assert!(lines[2].contains("unparseable"), "{}", lines[2]);
        let mut jsonl = Vec::new();
        write_export(&mut jsonl, &records, ExportFormat::Jsonl).unwrap();
        let first: serde_json::Value =
            serde_json::from_str(String::from_utf8(jsonl).unwrap().lines().next().unwrap())
                .unwrap();
        assert_eq!(first["event"]["a"], "x,\"y\"");
        assert_eq!(first["offset"], 7);
        assert_eq!("csv".parse::<ExportFormat>(), Ok(ExportFormat::Csv));
        assert!("xml".parse::<ExportFormat>().is_err());
    }
}

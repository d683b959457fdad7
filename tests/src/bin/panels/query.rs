//! The dashboard's queries as the lab asks Prometheus for them (Grafana's variables set by
//! [`lab_promql`]), and the series a `query_range` answer holds, named by the panel's
//! `legendFormat`.

use std::time::Duration;

use lb_tests::deploy::substitute;
use serde_json::{Map, Value};

use crate::grid::Series;

/// What `$__rate_interval` stands for: ten scrapes at the lab's 1 s interval, so a rate
/// follows a fault within seconds.
pub const RATE_INTERVAL: &str = "10s";

#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("the answer is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("Prometheus answered {status}: {error}")]
    Failed { status: String, error: String },
    #[error("the answer is not a matrix: {0}")]
    NotAMatrix(String),
}

/// `expr` with `$__rate_interval` set to [`RATE_INTERVAL`], `$__interval` to the query's
/// `step`, and the dashboard's `variables` (`$vip`) matching every value.
pub fn lab_promql(expr: &str, variables: &[&str], step: Duration) -> String {
    let step = format!("{}s", step.as_secs().max(1));
    substitute(expr, variables, &[("$__rate_interval", RATE_INTERVAL), ("$__interval", &step)])
}

/// Grafana's legend of a series: `{{label}}` replaced by the series' value of that label
/// (nothing when it has none); without a format, the labels as sorted `name="value"` pairs.
pub fn legend(format: &str, labels: &Map<String, Value>) -> String {
    let value = |name: &str| labels.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
    if format.trim().is_empty() {
        let mut names: Vec<&String> = labels.keys().collect();
        names.sort();
        let pairs: Vec<String> = names.into_iter().map(|k| format!("{k}=\"{}\"", value(k))).collect();
        return format!("{{{}}}", pairs.join(", "));
    }
    let mut out = String::new();
    let mut rest = format;
    while let Some((before, after)) = rest.split_once("{{") {
        let Some((name, tail)) = after.split_once("}}") else { break };
        out.push_str(before);
        out.push_str(&value(name.trim()));
        rest = tail;
    }
    out.push_str(rest);
    out.trim().to_owned()
}

/// The series of a `/api/v1/query_range` answer, times made seconds since `start` (Unix
/// seconds); values that are not finite (NaN of 0/0, +Inf) are left out.
pub fn matrix(body: &str, legend_format: &str, start: f64) -> Result<Vec<Series>, AnswerError> {
    let answer: Value = serde_json::from_str(body)?;
    if answer["status"] != "success" {
        let text = |key: &str| answer[key].as_str().unwrap_or("?").to_owned();
        return Err(AnswerError::Failed { status: text("status"), error: text("error") });
    }
    let results = answer["data"]["result"].as_array().filter(|_| answer["data"]["resultType"] == "matrix");
    let results = results.ok_or_else(|| AnswerError::NotAMatrix(answer["data"].to_string()))?;
    let mut series = Vec::with_capacity(results.len());
    for result in results {
        let labels = result["metric"].as_object().cloned().unwrap_or_default();
        let values = result["values"].as_array().ok_or_else(|| AnswerError::NotAMatrix(result.to_string()))?;
        let points = values
            .iter()
            .filter_map(|pair| {
                let t = pair[0].as_f64()?;
                let v: f64 = pair[1].as_str()?.parse().ok()?;
                v.is_finite().then_some((t - start, v))
            })
            .collect();
        series.push(Series { label: legend(legend_format, &labels), points });
    }
    Ok(series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grafana_variables_become_the_labs_values() {
        let expr = "sum by (vip) (rate(lb_vip_packets_total{vip=~\"$vip\"}[$__rate_interval])) \
                    + avg_over_time(lb_vip_flows{vip=~\"${vip}\"}[$__interval])";
        assert_eq!(
            lab_promql(expr, &["datasource", "vip"], Duration::from_secs(2)),
            "sum by (vip) (rate(lb_vip_packets_total{vip=~\".*\"}[10s])) \
             + avg_over_time(lb_vip_flows{vip=~\".*\"}[2s])"
        );
        assert_eq!(lab_promql("up{job=\"lb\"}", &["vip"], Duration::from_secs(2)), "up{job=\"lb\"}");
    }

    #[test]
    fn legends_take_the_series_labels() {
        let labels = serde_json::json!({"vip": "web-nat", "level": "0"});
        let labels = labels.as_object().unwrap();
        assert_eq!(legend("{{vip}} level {{level}}", labels), "web-nat level 0");
        assert_eq!(legend("{{ vip }} replies", labels), "web-nat replies");
        assert_eq!(legend("{{backend}} 5xx", labels), "5xx");
        assert_eq!(legend("", labels), "{level=\"0\", vip=\"web-nat\"}");
    }

    #[test]
    fn a_matrix_answer_becomes_series_in_seconds_since_the_start() {
        let body = r#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"vip":"web"},"values":[[1000,"1.5"],[1002,"NaN"],[1004,"3"]]}]}}"#;
        let series = matrix(body, "{{vip}}", 1000.0).unwrap();
        assert_eq!(series, [Series { label: "web".into(), points: vec![(0.0, 1.5), (4.0, 3.0)] }]);
        let failed = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert!(matches!(matrix(failed, "", 0.0), Err(AnswerError::Failed { .. })));
        let vector = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(matches!(matrix(vector, "", 0.0), Err(AnswerError::NotAMatrix(_))));
    }
}

//! What operators deploy next to `lb` (deploy/): the Prometheus alerting rules and the
//! Grafana dashboard, read as their tools read them, and the metric names their PromQL
//! uses (parsed with `promql-parser`) against the series a scrape of `lb` holds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};
use promql_parser::label::MatchOp;
use promql_parser::parser::{Expr, VectorSelector};
use promql_parser::util::{ExprVisitor, walk_expr};
use yaml_rust2::YamlLoader;

use crate::lab::require_tool;

/// Series Prometheus makes itself for every target, not scraped from `lb`.
pub const PROMETHEUS_SERIES: &[&str] =
    &["up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added"];

/// What Grafana's built-in variables stand for when a panel's query is checked as PromQL.
pub const GRAFANA_INTERVALS: &[(&str, &str)] = &[("$__rate_interval", "5m"), ("$__interval", "1m"), ("$__range", "1h")];

/// A PromQL expression and where it comes from (an alert or a panel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub origin: String,
    pub expr: String,
}

/// A file of deploy/, by its path below it.
pub fn deploy_path(relative: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy")).join(relative)
}

/// Runs `promtool ARGS`: its output, or an error with it when it fails. Panics when promtool
/// is not installed (the test cannot do its job).
pub fn promtool(args: &[&str]) -> Result<String> {
    require_tool("promtool", "prometheus");
    let output = Command::new("promtool").args(args).output().context("running promtool")?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    ensure!(output.status.success(), "promtool {args:?} failed ({}):\n{text}", output.status);
    Ok(text)
}

/// The `expr` of every rule in a Prometheus rules file, by alert (or recorded) name.
pub fn rule_queries(yaml: &str) -> Result<Vec<Query>> {
    let docs = YamlLoader::load_from_str(yaml).context("the rules are not YAML")?;
    let groups = docs.first().and_then(|d| d["groups"].as_vec()).context("no `groups` list")?;
    let mut queries = Vec::new();
    for rule in groups.iter().flat_map(|g| g["rules"].as_vec().map(Vec::as_slice).unwrap_or_default()) {
        let name = rule["alert"].as_str().or(rule["record"].as_str()).context("a rule without a name")?;
        let expr = rule["expr"].as_str().with_context(|| format!("rule {name} has no expr"))?;
        queries.push(Query { origin: format!("alert {name}"), expr: expr.to_owned() });
    }
    ensure!(!queries.is_empty(), "no rules");
    Ok(queries)
}

/// A panel of a Grafana dashboard: its title and its targets, as the dashboard has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panel {
    pub title: String,
    pub targets: Vec<Target>,
}

/// A panel's query (with the dashboard's variables in it) and its `legendFormat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub expr: String,
    pub legend: String,
}

/// Every query of a Grafana dashboard: each panel's targets and each query variable, with
/// the dashboard's and Grafana's variables replaced by values PromQL accepts. A panel
/// without a query is an error.
pub fn dashboard_queries(dashboard: &serde_json::Value) -> Result<Vec<Query>> {
    let variables = dashboard["templating"]["list"].as_array().context("no templating list")?;
    let names = variable_names(dashboard)?;
    let promql = |expr: &str| substitute(expr, &names, GRAFANA_INTERVALS);
    let mut queries = Vec::new();
    for v in variables.iter().filter(|v| v["type"] == "query") {
        let query = v["query"]["query"].as_str().or(v["query"].as_str()).context("a query variable without query")?;
        let origin = format!("variable {}", v["name"]);
        queries.push(Query { origin, expr: promql(label_values_selector(query)?) });
    }
    for panel in dashboard_panels(dashboard)? {
        let origin = format!("panel {:?}", panel.title);
        queries.extend(panel.targets.iter().map(|t| Query { origin: origin.clone(), expr: promql(&t.expr) }));
    }
    Ok(queries)
}

/// The names of the dashboard's own variables (`vip`, `datasource`).
pub fn variable_names(dashboard: &serde_json::Value) -> Result<Vec<&str>> {
    let variables = dashboard["templating"]["list"].as_array().context("no templating list")?;
    Ok(variables.iter().filter_map(|v| v["name"].as_str()).collect())
}

/// The dashboard's panels in its order, each with its non-empty queries. A panel without
/// a query is an error.
pub fn dashboard_panels(dashboard: &serde_json::Value) -> Result<Vec<Panel>> {
    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().context("no panels")? {
        let title = panel["title"].as_str().context("a panel without a title")?;
        let targets: Vec<Target> = panel["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| {
                let expr = t["expr"].as_str().filter(|e| !e.trim().is_empty())?;
                Some(Target {
                    expr: expr.to_owned(),
                    legend: t["legendFormat"].as_str().unwrap_or_default().to_owned(),
                })
            })
            .collect();
        ensure!(!targets.is_empty(), "panel {title:?} has no query");
        panels.push(Panel { title: title.to_owned(), targets });
    }
    Ok(panels)
}

/// The series selector of Grafana's `label_values(SELECTOR, label)`.
fn label_values_selector(query: &str) -> Result<&str> {
    let inner = query.trim().strip_prefix("label_values(").and_then(|q| q.strip_suffix(')'));
    let Some((selector, _label)) = inner.and_then(|q| q.rsplit_once(',')) else {
        bail!("not label_values(selector, label): {query}");
    };
    Ok(selector.trim())
}

/// `expr` with Grafana's interval variables set to `intervals` (`("$__rate_interval", "5m")`,
/// ...) and the dashboard's own variables (`$vip`, `${datasource}`) matching anything.
pub fn substitute(expr: &str, variables: &[&str], intervals: &[(&str, &str)]) -> String {
    let mut out = expr.to_owned();
    for (variable, value) in intervals {
        out = out.replace(variable, value);
    }
    for name in variables {
        out = out.replace(&format!("${{{name}}}"), ".*").replace(&format!("${name}"), ".*");
    }
    out
}

/// The metric names an expression selects. An expression that is not PromQL, or a selector
/// without a metric name (`{job="lb"}`), is an error.
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>> {
    let ast = promql_parser::parser::parse(expr).map_err(|e| anyhow::anyhow!("not PromQL ({e}): {expr}"))?;
    let mut names = Names(BTreeSet::new());
    walk_expr(&mut names, &ast).with_context(|| format!("in {expr}"))?;
    Ok(names.0)
}

struct Names(BTreeSet<String>);

impl ExprVisitor for Names {
    type Error = anyhow::Error;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool> {
        let selector = match expr {
            Expr::VectorSelector(vs) => vs,
            Expr::MatrixSelector(ms) => &ms.vs,
            _ => return Ok(true),
        };
        self.0.insert(selected_name(selector)?);
        Ok(true)
    }
}

fn selected_name(selector: &VectorSelector) -> Result<String> {
    if let Some(name) = &selector.name {
        return Ok(name.clone());
    }
    let by_matcher = selector.matchers.matchers.iter().find(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal));
    by_matcher.map(|m| m.value.clone()).with_context(|| format!("a selector without a metric name: {selector}"))
}

/// The names of the series a scrape of this text stores: a sample's name, checked against
/// its family's `# TYPE` (counters' samples end in `_total`, histograms' in `_bucket`,
/// `_sum`, `_count`, ...). A sample no family declares, or one with a suffix its type does
/// not have, is an error.
pub fn scraped_series(text: &str) -> Result<BTreeSet<String>> {
    let mut families = BTreeMap::new();
    let mut series = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let (family, kind) =
                declared.split_once(' ').with_context(|| format!("a TYPE line without a type: {line}"))?;
            families.insert(family.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        ensure!(belongs_to_a_family(name, &families), "sample {name} matches no declared family and type: {line}");
        series.insert(name.to_owned());
    }
    Ok(series)
}

fn belongs_to_a_family(name: &str, families: &BTreeMap<String, String>) -> bool {
    families.iter().any(|(family, kind)| {
        let suffixes: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count", "_created", "_gsum", "_gcount"],
            "summary" => &["", "_sum", "_count", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        suffixes.iter().any(|suffix| name.strip_suffix(suffix) == Some(family.as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_come_from_every_selector_of_the_expression() {
        let expr = "sum by (vip) (rate(lb_vip_packets_total{vip=~\".*\"}[5m])) / ignoring(backend) group_left \
                    {__name__=\"lb_nat_ports_per_backend\"} > 0.8 and absent(up{job=\"lb\"})";
        let names = metric_names(expr).unwrap();
        assert_eq!(names, ["lb_nat_ports_per_backend", "lb_vip_packets_total", "up"].map(String::from).into());
        assert!(metric_names("{job=\"lb\"}").is_err(), "no metric name");
        assert!(metric_names("rate(lb_vip_packets_total[5m]").is_err(), "not PromQL");
    }

    #[test]
    fn scraped_series_follow_their_family_type() {
        let text = "# TYPE lb_vip_packets counter\nlb_vip_packets_total{vip=\"web\"} 3\n# TYPE lb_vip_panic gauge\n\
                    lb_vip_panic{vip=\"web\"} 0\n# TYPE rtt histogram\nrtt_bucket{le=\"1\"} 1\nrtt_count 1\n# EOF\n";
        let series = scraped_series(text).unwrap();
        assert_eq!(
            series,
            ["lb_vip_packets_total", "lb_vip_panic", "rtt_bucket", "rtt_count"].map(String::from).into()
        );
        assert!(
            scraped_series("# TYPE lb_vip_packets counter\nlb_vip_packets 3\n").is_err(),
            "a counter without _total"
        );
        assert!(scraped_series("lb_other 1\n").is_err(), "no family");
    }

    #[test]
    fn dashboard_variables_become_promql() {
        let dashboard = serde_json::json!({
            "templating": {"list": [
                {"name": "datasource", "type": "datasource"},
                {"name": "vip", "type": "query", "query": {"query": "label_values(lb_vip_packets_total, vip)"}},
            ]},
            "panels": [{"title": "p", "targets": [{"expr": "rate(lb_vip_bytes_total{vip=~\"$vip\"}[$__rate_interval])"}]}],
        });
        let queries = dashboard_queries(&dashboard).unwrap();
        let exprs: Vec<&str> = queries.iter().map(|q| q.expr.as_str()).collect();
        assert_eq!(exprs, ["lb_vip_packets_total", "rate(lb_vip_bytes_total{vip=~\".*\"}[5m])"]);
        let mut without_query = dashboard.clone();
        without_query["panels"][0]["targets"] = serde_json::json!([]);
        assert!(dashboard_queries(&without_query).is_err(), "a panel without a query");
    }
}

//! deploy/: the alerting rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`), the dashboard is valid with a query in every panel, and every
//! metric name either uses is a series a running `lb` exposes, with nat and dsr VIPs,
//! outlier detection, rate limits and `[dns]` configured so that the labelled series exist.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use lb_tests::deploy::{
    PROMETHEUS_SERIES, Query, dashboard_queries, deploy_path, metric_names, promtool, rule_queries, scraped_series,
};
use lb_tests::lab::{LB_V4, LbProcess};
use lb_tests::metrics_lab::{DNS_NAME, NAT_VIP, build_lab, every_series_config};
use lb_tests::sites::resolve_a;
use lb_userspace::api::client::AdminClient;
use lb_userspace::config::AdminConfig;

fn rules() -> Result<Vec<Query>> {
    rule_queries(&std::fs::read_to_string(deploy_path("prometheus/lb-alerts.yml"))?)
}

fn dashboard() -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(deploy_path("grafana/lb-dashboard.json"))?;
    serde_json::from_str(&text).context("the dashboard is not JSON")
}

#[test]
fn promtool_checks_the_rules_and_passes_their_unit_tests() -> Result<()> {
    let file = deploy_path("prometheus/lb-alerts.yml");
    let checked = promtool(&["check", "rules", file.to_str().context("a UTF-8 path")?])?;
    ensure!(checked.contains(&format!("SUCCESS: {} rules found", rules()?.len())), "{checked}");
    let tests = deploy_path("prometheus/lb-alerts.test.yml");
    let tested = promtool(&["test", "rules", tests.to_str().context("a UTF-8 path")?])?;
    ensure!(tested.contains("SUCCESS"), "{tested}");
    Ok(())
}

#[test]
fn the_dashboard_is_valid_and_every_panel_queries_prometheus() -> Result<()> {
    let dashboard = dashboard()?;
    let variables = dashboard["templating"]["list"].as_array().context("no variables")?;
    let variable = |name: &str| variables.iter().find(|v| v["name"] == name).with_context(|| format!("no ${name}"));
    ensure!(variable("datasource")?["type"] == "datasource" && variable("datasource")?["query"] == "prometheus");
    let vip = variable("vip")?;
    ensure!(vip["query"]["query"].as_str().is_some_and(|q| q.starts_with("label_values(")), "{vip}");
    let panels = dashboard["panels"].as_array().context("no panels")?;
    let ids: BTreeSet<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    ensure!(ids.len() == panels.len(), "panel ids missing or repeated");
    for panel in panels {
        ensure!(panel["datasource"]["uid"] == "${datasource}", "panel {} ignores $datasource", panel["title"]);
        ensure!(panel["gridPos"]["w"].as_u64().is_some(), "panel {} has no place", panel["title"]);
    }
    // Every panel has a query, and each is PromQL once the variables are set.
    for query in dashboard_queries(&dashboard)? {
        metric_names(&query.expr).with_context(|| query.origin.clone())?;
    }
    Ok(())
}

#[test]
fn every_metric_the_rules_and_dashboard_use_is_exposed_by_a_running_lb() -> Result<()> {
    let lab = build_lab("dplr")?;
    let config = every_series_config(&lab);
    let mut lb = LbProcess::start(&lab, &config)?;
    // A reload (`lb_last_reload_applied`) and a DNS answer (answers by source, responses by
    // code) make the series that only exist once they happened.
    lb.reload(&config)?;
    let answer = lab.client.run(|| resolve_a(LB_V4, DNS_NAME, Duration::from_secs(2)))??;
    ensure!(answer.0 == [NAT_VIP], "{DNS_NAME} answered {answer:?}");
    let text = lab.lb.run(|| AdminClient::new(&AdminConfig::default()).call("GET", "/metrics"))??;
    let exposed = scraped_series(&text)?;

    let mut queries = rules()?;
    queries.extend(dashboard_queries(&dashboard()?)?);
    let mut missing = Vec::new();
    for query in &queries {
        for name in metric_names(&query.expr).with_context(|| query.origin.clone())? {
            if !exposed.contains(&name) && !PROMETHEUS_SERIES.contains(&name.as_str()) {
                missing.push(format!("{}: {name}", query.origin));
            }
        }
    }
    ensure!(missing.is_empty(), "not exposed by lb:\n{}\n\nits /metrics:\n{text}", missing.join("\n"));
    Ok(())
}

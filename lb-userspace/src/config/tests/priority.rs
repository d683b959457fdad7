//! `overprovisioning_factor` and `locality_weights`: defaults, and what is refused.

use super::*;

fn with(extra: &str) -> String {
    replace(GOOD, "port = 80\n", &format!("port = 80\n{extra}\n"))
}

#[test]
fn priority_settings_parse_with_defaults() {
    let c = parse(GOOD, "t").unwrap();
    assert_eq!(c.vips[0].overprovisioning_factor.hundredths(), 140, "Envoy's 1.4");
    assert!(c.vips[0].locality_weights.is_empty());
    let c = parse(&with("overprovisioning_factor = 2\nlocality_weights = { \"r1/z1\" = 3, r1 = 1 }"), "t").unwrap();
    assert_eq!(c.vips[0].overprovisioning_factor.hundredths(), 200);
    assert_eq!(c.vips[0].locality_weights, [("r1".to_owned(), 1), ("r1/z1".to_owned(), 3)].into());
    let c = parse(&with("overprovisioning_factor = 1.25"), "t").unwrap();
    assert_eq!(c.vips[0].overprovisioning_factor.hundredths(), 125);
}

#[test]
fn priority_settings_validated() {
    let line = line_with(GOOD, "port = 80", 0) + 1;
    for bad in ["0", "-1.4", "0.001", "1000"] {
        expect(
            &with(&format!("overprovisioning_factor = {bad}")),
            "vip[0].overprovisioning_factor",
            line,
            "0.01..=100",
        );
    }
    let refused = |weights: &str, msg: &str| {
        let e = err(&with(&format!("locality_weights = {{ {weights} }}")));
        assert!(e.key.starts_with("vip[0].locality_weights"), "{e}");
        assert_eq!(e.line, Some(line), "{e}");
        assert!(e.message.contains(msg), "{e} lacks {msg:?}");
    };
    refused("\"r1/z9\" = 1", "none of the VIP's backends");
    refused("r2 = 1", "none of the VIP's backends");
    refused("\"r1/\" = 1", "\"region\" or \"region/zone\"");
    refused("\"/z1\" = 1", "\"region\" or \"region/zone\"");
    refused("\"r1/z1/a\" = 1", "\"region\" or \"region/zone\"");
    refused("\"r1/z1\" = 0", "at least 1");
    // The unlabelled backend is in the balancer's r1/z1.
    let c = parse(
        &replace(
            &with("locality_weights = { \"r1/z1\" = 1 }"),
            "zone = \"z1\"\n\n[[vip.backend]]",
            "zone = \"z2\"\n\n[[vip.backend]]",
        ),
        "t",
    );
    assert!(c.is_ok(), "{c:?}");
}

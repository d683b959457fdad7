//! `[admin]`: where the admin interface listens, and the token it asks for.

use std::net::SocketAddr;

use serde::Deserialize;

/// Where the admin interface listens, and the token it asks for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Default 127.0.0.1:9180. Any address other than a loopback one needs `token`.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// When set, every request must carry `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: default_admin_listen(), token: None }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9180))
}

//! The admin API as its clients see it: the wire types of `/v1/status`, `/v1/flows` and
//! `/v1/dns/view` (status, flows, dns) with the tables `lb status` and `lb flows` print, the
//! wait of `lb drain --timeout` (drain), and the client that `lb` commands and DNS peers
//! call a running controller with. Plain types: nothing here depends on the controller's
//! state.

pub mod bgp;
pub mod client;
pub mod dns;
pub mod drain;
pub mod flows;
pub mod status;

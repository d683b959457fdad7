//! The admin API as its clients see it: the wire types of `/v1/status` and `/v1/dns/view`
//! (status, dns) with the status table `lb status` prints, and the client that `lb`
//! commands and DNS peers call a running controller with. Plain types: nothing here
//! depends on the controller's state.

pub mod client;
pub mod dns;
pub mod status;

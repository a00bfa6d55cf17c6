//! IP networks in CIDR notation, as `[delivery] allowed_networks` lists them.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IP network in CIDR notation (`10.0.0.0/8`, `::1/128`; a bare address is a
/// network of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl IpNet {
    /// Whether `address` is in this network. IPv4-mapped IPv6 addresses
    /// (`::ffff:10.0.0.1`) count as their IPv4 address.
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            IpAddr::V4(_) => address,
        };
        match (self.address, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => prefix_matches(
                network.to_bits().into(),
                address.to_bits().into(),
                32,
                self.prefix_len,
            ),
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                prefix_matches(network.to_bits(), address.to_bits(), 128, self.prefix_len)
            }
            _ => false,
        }
    }
}

fn prefix_matches(network: u128, address: u128, width: u32, prefix_len: u8) -> bool {
    let ignored_bits = width - u32::from(prefix_len);
    if ignored_bits >= width {
        return true;
    }
    (network >> ignored_bits) == (address >> ignored_bits)
}

impl FromStr for IpNet {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "invalid network \"{text}\": expected a CIDR like \"10.0.0.0/8\" or an IP address"
            )
        };
        let (address_text, prefix_text) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address_text.parse().map_err(|_| invalid())?;
        let width = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix_text {
            None => width,
            Some(prefix) => prefix.parse::<u8>().map_err(|_| invalid())?,
        };
        if prefix_len > width {
            return Err(format!(
                "invalid network \"{text}\": the prefix length must be at most {width}"
            ));
        }
        Ok(IpNet {
            address,
            prefix_len,
        })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.address, self.prefix_len)
    }
}

impl<'de> serde::Deserialize<'de> for IpNet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::units::deserialize_text(deserializer, "a network like \"10.0.0.0/8\"", str::parse)
    }
}

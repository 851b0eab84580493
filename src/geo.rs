//! Geography: country sets, geofences and travel speed, on the `geo` crate.

use geo::{Contains, Distance, Haversine, LineString, Point, Polygon};

use crate::domain::{Country, LatLon};

/// Great-circle distance in kilometres between two (lat, lon) points.
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    // geo points are (x = lon, y = lat).
    Haversine::distance(Point::new(a.1, a.0), Point::new(b.1, b.0)) / 1000.0
}

/// A set of ISO 3166 alpha-2 countries as a 676-bit set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CountrySet([u64; 11]);

impl CountrySet {
    pub fn insert(&mut self, c: Country) {
        let i = c.index();
        self.0[i / 64] |= 1 << (i % 64);
    }
    pub fn contains(&self, c: Country) -> bool {
        let i = c.index();
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
}

/// A geofence area.
#[derive(Debug, Clone)]
pub enum Shape {
    Circle { center: LatLon, radius_km: f64 },
    Polygon(Polygon<f64>),
}

impl Shape {
    /// Builds a polygon from `[lat, lon]` vertices.
    pub fn polygon(vertices: &[[f64; 2]]) -> Shape {
        let ring: Vec<(f64, f64)> = vertices.iter().map(|v| (v[1], v[0])).collect();
        Shape::Polygon(Polygon::new(LineString::from(ring), vec![]))
    }

    pub fn contains(&self, p: LatLon) -> bool {
        match self {
            Shape::Circle { center, radius_km } => {
                distance_km((center.lat, center.lon), (p.lat, p.lon)) <= *radius_km
            }
            Shape::Polygon(poly) => poly.contains(&Point::new(p.lon, p.lat)),
        }
    }

    /// Distance from a point to the fence's centre (circle) for explanations.
    pub fn describe(&self, p: LatLon) -> String {
        match self {
            Shape::Circle { center, radius_km } => format!(
                "{:.1} km from centre, radius {radius_km} km",
                distance_km((center.lat, center.lon), (p.lat, p.lon))
            ),
            Shape::Polygon(_) => format!("({:.4}, {:.4}) against polygon", p.lat, p.lon),
        }
    }
}

/// Speed in km/h implied by moving between two located transactions. Two different
/// places at the same instant give infinity; the same place gives zero.
pub fn travel_speed_kmh(from: LatLon, from_ms: i64, to: LatLon, to_ms: i64) -> f64 {
    let km = distance_km((from.lat, from.lon), (to.lat, to.lon));
    // Within a kilometre is "the same place" (terminal coordinates are imprecise).
    if km < 1.0 {
        return 0.0;
    }
    let hours = (to_ms - from_ms) as f64 / 3_600_000.0;
    if hours <= 0.0 {
        return f64::INFINITY;
    }
    km / hours
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAGOS: LatLon = LatLon {
        lat: 6.5244,
        lon: 3.3792,
    };
    const NAIROBI: LatLon = LatLon {
        lat: -1.2921,
        lon: 36.8219,
    };

    #[test]
    fn lagos_to_nairobi_is_about_3800_km() {
        let km = distance_km((LAGOS.lat, LAGOS.lon), (NAIROBI.lat, NAIROBI.lon));
        assert!((3700.0..3900.0).contains(&km), "{km}");
    }

    #[test]
    fn circle_and_polygon() {
        let c = Shape::Circle {
            center: LAGOS,
            radius_km: 80.0,
        };
        assert!(c.contains(LatLon { lat: 6.6, lon: 3.3 }));
        assert!(!c.contains(NAIROBI));
        let square = Shape::polygon(&[[6.0, 3.0], [7.0, 3.0], [7.0, 4.0], [6.0, 4.0]]);
        assert!(square.contains(LAGOS));
        assert!(!square.contains(NAIROBI));
    }

    #[test]
    fn speed() {
        let one_hour = 3_600_000;
        let s = travel_speed_kmh(LAGOS, 0, NAIROBI, one_hour);
        assert!(s > 3000.0);
        assert_eq!(travel_speed_kmh(LAGOS, 0, LAGOS, 0), 0.0);
        assert!(travel_speed_kmh(LAGOS, 10, NAIROBI, 10).is_infinite());
    }

    #[test]
    fn country_set() {
        let mut s = CountrySet::default();
        s.insert(Country::parse("NG").unwrap());
        s.insert(Country::parse("ZW").unwrap());
        assert!(s.contains(Country::parse("NG").unwrap()));
        assert!(s.contains(Country::parse("ZW").unwrap()));
        assert!(!s.contains(Country::parse("GH").unwrap()));
    }
}

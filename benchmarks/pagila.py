"""A schema the size and shape of pagila (PostgreSQL's port of MySQL's sakila), for the
``startup`` case: what one command line call costs before it does anything.

pagila itself is not shipped here; this DDL resembles it: 15 tables (``payment``
partitioned by month on PostgreSQL: 7 partitions, 22 tables in all), their 22 foreign
keys (ON UPDATE CASCADE ON DELETE RESTRICT, ``payment.rental_id`` ON DELETE SET NULL, as
in sakila), the indexes on them, a few views and a few rows per table.  Built for
PostgreSQL, MySQL/MariaDB and SQLite; :func:`create` drops what it creates first,
:func:`drop` removes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, Engine

#: (table, columns); ``{ts}``, ``{rating}`` and ``{text}`` are the dialect's types
TABLES: list[tuple[str, str]] = [
    ("country", "country_id INTEGER NOT NULL PRIMARY KEY, country VARCHAR(50) NOT NULL"),
    (
        "city",
        "city_id INTEGER NOT NULL PRIMARY KEY, city VARCHAR(50) NOT NULL, "
        "country_id INTEGER NOT NULL",
    ),
    (
        "address",
        "address_id INTEGER NOT NULL PRIMARY KEY, address VARCHAR(50) NOT NULL, "
        "address2 VARCHAR(50), district VARCHAR(20) NOT NULL, city_id INTEGER NOT NULL, "
        "postal_code VARCHAR(10), phone VARCHAR(20) NOT NULL",
    ),
    ("language", "language_id INTEGER NOT NULL PRIMARY KEY, name CHAR(20) NOT NULL"),
    (
        "actor",
        "actor_id INTEGER NOT NULL PRIMARY KEY, first_name VARCHAR(45) NOT NULL, "
        "last_name VARCHAR(45) NOT NULL",
    ),
    ("category", "category_id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(25) NOT NULL"),
    (
        "film",
        "film_id INTEGER NOT NULL PRIMARY KEY, title VARCHAR(255) NOT NULL, "
        "description {text}, release_year INTEGER, language_id INTEGER NOT NULL, "
        "original_language_id INTEGER, rental_duration SMALLINT NOT NULL DEFAULT 3, "
        "rental_rate NUMERIC(4,2) NOT NULL DEFAULT 4.99, length SMALLINT, "
        "replacement_cost NUMERIC(5,2) NOT NULL DEFAULT 19.99, rating {rating}, "
        "special_features VARCHAR(100)",
    ),
    (
        "film_actor",
        "actor_id INTEGER NOT NULL, film_id INTEGER NOT NULL, PRIMARY KEY (actor_id, film_id)",
    ),
    (
        "film_category",
        "film_id INTEGER NOT NULL, category_id INTEGER NOT NULL, "
        "PRIMARY KEY (film_id, category_id)",
    ),
    (
        "staff",
        "staff_id INTEGER NOT NULL PRIMARY KEY, first_name VARCHAR(45) NOT NULL, "
        "last_name VARCHAR(45) NOT NULL, address_id INTEGER NOT NULL, email VARCHAR(50), "
        "store_id INTEGER NOT NULL, active BOOLEAN NOT NULL DEFAULT TRUE, "
        "username VARCHAR(16) NOT NULL, password VARCHAR(40)",
    ),
    (
        "store",
        "store_id INTEGER NOT NULL PRIMARY KEY, manager_staff_id INTEGER NOT NULL, "
        "address_id INTEGER NOT NULL",
    ),
    (
        "customer",
        "customer_id INTEGER NOT NULL PRIMARY KEY, store_id INTEGER NOT NULL, "
        "first_name VARCHAR(45) NOT NULL, last_name VARCHAR(45) NOT NULL, email VARCHAR(50), "
        "address_id INTEGER NOT NULL, activebool BOOLEAN NOT NULL DEFAULT TRUE, "
        "create_date DATE NOT NULL, active INTEGER",
    ),
    (
        "inventory",
        "inventory_id INTEGER NOT NULL PRIMARY KEY, film_id INTEGER NOT NULL, "
        "store_id INTEGER NOT NULL",
    ),
    (
        "rental",
        "rental_id INTEGER NOT NULL PRIMARY KEY, rental_date {ts} NOT NULL, "
        "inventory_id INTEGER NOT NULL, customer_id INTEGER NOT NULL, return_date {ts}, "
        "staff_id INTEGER NOT NULL",
    ),
    (
        "payment",
        "payment_id INTEGER NOT NULL, customer_id INTEGER NOT NULL, staff_id INTEGER NOT NULL, "
        "rental_id INTEGER, amount NUMERIC(5,2) NOT NULL, payment_date {ts} NOT NULL, "
        "PRIMARY KEY (payment_date, payment_id)",
    ),
]

#: every table has it, as in pagila
LAST_UPDATE = "last_update {ts} NOT NULL DEFAULT CURRENT_TIMESTAMP"

#: (table, columns, referred table, referred columns, ON DELETE)
FOREIGN_KEYS: list[tuple[str, str, str, str, str]] = [
    ("city", "country_id", "country", "country_id", "RESTRICT"),
    ("address", "city_id", "city", "city_id", "RESTRICT"),
    ("film", "language_id", "language", "language_id", "RESTRICT"),
    ("film", "original_language_id", "language", "language_id", "RESTRICT"),
    ("film_actor", "actor_id", "actor", "actor_id", "RESTRICT"),
    ("film_actor", "film_id", "film", "film_id", "RESTRICT"),
    ("film_category", "film_id", "film", "film_id", "RESTRICT"),
    ("film_category", "category_id", "category", "category_id", "RESTRICT"),
    ("staff", "address_id", "address", "address_id", "RESTRICT"),
    ("staff", "store_id", "store", "store_id", "RESTRICT"),
    ("store", "manager_staff_id", "staff", "staff_id", "RESTRICT"),
    ("store", "address_id", "address", "address_id", "RESTRICT"),
    ("customer", "store_id", "store", "store_id", "RESTRICT"),
    ("customer", "address_id", "address", "address_id", "RESTRICT"),
    ("inventory", "film_id", "film", "film_id", "RESTRICT"),
    ("inventory", "store_id", "store", "store_id", "RESTRICT"),
    ("rental", "inventory_id", "inventory", "inventory_id", "RESTRICT"),
    ("rental", "customer_id", "customer", "customer_id", "RESTRICT"),
    ("rental", "staff_id", "staff", "staff_id", "RESTRICT"),
    ("payment", "customer_id", "customer", "customer_id", "RESTRICT"),
    ("payment", "staff_id", "staff", "staff_id", "RESTRICT"),
    ("payment", "rental_id", "rental", "rental_id", "SET NULL"),
]

#: (name, table, columns, unique): besides one index per foreign key
INDEXES: list[tuple[str, str, str, bool]] = [
    ("idx_actor_last_name", "actor", "last_name", False),
    ("idx_title", "film", "title", False),
    ("idx_last_name", "customer", "last_name", False),
    ("idx_store_id_film_id", "inventory", "store_id, film_id", False),
    ("idx_unq_rental", "rental", "rental_date, inventory_id, customer_id", True),
    ("idx_unq_manager_staff_id", "store", "manager_staff_id", True),
]

VIEWS: list[tuple[str, str]] = [
    (
        "customer_list",
        "SELECT cu.customer_id AS id, cu.first_name, cu.last_name, a.address, a.phone, "
        "city.city, country.country, cu.store_id AS sid FROM customer cu "
        "JOIN address a ON cu.address_id = a.address_id "
        "JOIN city ON a.city_id = city.city_id "
        "JOIN country ON city.country_id = country.country_id",
    ),
    (
        "film_list",
        "SELECT film.film_id AS fid, film.title, category.name AS category, "
        "film.rental_rate AS price, film.length, film.rating FROM film "
        "LEFT JOIN film_category ON film_category.film_id = film.film_id "
        "LEFT JOIN category ON category.category_id = film_category.category_id",
    ),
    (
        "staff_list",
        "SELECT s.staff_id AS id, s.first_name, s.last_name, a.address, a.phone, "
        "s.store_id AS sid FROM staff s JOIN address a ON s.address_id = a.address_id",
    ),
    (
        "sales_by_store",
        "SELECT s.store_id, SUM(p.amount) AS total_sales FROM payment p "
        "JOIN rental r ON p.rental_id = r.rental_id "
        "JOIN inventory i ON r.inventory_id = i.inventory_id "
        "JOIN store s ON i.store_id = s.store_id GROUP BY s.store_id",
    ),
    (
        "sales_by_film_category",
        "SELECT c.name AS category, SUM(p.amount) AS total_sales FROM payment p "
        "JOIN rental r ON p.rental_id = r.rental_id "
        "JOIN inventory i ON r.inventory_id = i.inventory_id "
        "JOIN film_category fc ON i.film_id = fc.film_id "
        "JOIN category c ON fc.category_id = c.category_id GROUP BY c.name",
    ),
]

#: a few rows per table, in an order the keys accept (but for store and staff, which
#: reference each other)
ROWS: list[tuple[str, str]] = [
    ("country", "(1, 'Afghanistan'), (2, 'Algeria'), (3, 'Argentina')"),
    ("city", "(1, 'Kabul', 1), (2, 'Algiers', 2), (3, 'Bahia Blanca', 3)"),
    (
        "address",
        "(1, '47 MySakila Drive', NULL, 'Alberta', 1, NULL, '555'), "
        "(2, '28 MySQL Boulevard', NULL, 'QLD', 2, NULL, '556'), "
        "(3, '23 Workhaven Lane', NULL, 'Alberta', 3, '1000', '557'), "
        "(4, '1411 Lillydale Drive', NULL, 'QLD', 1, '1001', '558')",
    ),
    ("language", "(1, 'English'), (2, 'Italian')"),
    ("actor", "(1, 'PENELOPE', 'GUINESS'), (2, 'NICK', 'WAHLBERG'), (3, 'ED', 'CHASE')"),
    ("category", "(1, 'Action'), (2, 'Animation'), (3, 'Children')"),
    (
        "film",
        "(1, 'ACADEMY DINOSAUR', 'An epic drama', 2006, 1, NULL, 6, 0.99, 86, 20.99, 'PG', "
        "'Trailers'), (2, 'ACE GOLDFINGER', 'A thoughtful tale', 2006, 1, 2, 3, 4.99, 48, "
        "12.99, 'G', 'Trailers'), (3, 'ADAPTATION HOLES', 'An astounding reflection', 2006, "
        "1, NULL, 7, 2.99, 50, 18.99, 'NC-17', NULL)",
    ),
    ("film_actor", "(1, 1), (2, 1), (3, 2), (1, 3)"),
    ("film_category", "(1, 1), (2, 2), (3, 3)"),
    ("store", "(1, 1, 1), (2, 2, 2)"),
    (
        "staff",
        "(1, 'Mike', 'Hillyer', 3, NULL, 1, TRUE, 'Mike', NULL), "
        "(2, 'Jon', 'Stephens', 4, NULL, 2, TRUE, 'Jon', NULL)",
    ),
    (
        "customer",
        "(1, 1, 'MARY', 'SMITH', NULL, 3, TRUE, '2022-02-14', 1), "
        "(2, 1, 'PATRICIA', 'JOHNSON', NULL, 4, TRUE, '2022-02-14', 1), "
        "(3, 2, 'LINDA', 'WILLIAMS', NULL, 3, TRUE, '2022-02-14', 1), "
        "(4, 2, 'BARBARA', 'JONES', NULL, 4, TRUE, '2022-02-14', 1), "
        "(5, 1, 'MARY', 'SMITH', NULL, 3, TRUE, '2022-02-15', 1)",
    ),
    ("inventory", "(1, 1, 1), (2, 1, 2), (3, 2, 1), (4, 3, 2)"),
    (
        "rental",
        "(1, '2022-02-24 22:53:30', 1, 1, NULL, 1), (2, '2022-03-24 10:00:00', 2, 5, NULL, 2), "
        "(3, '2022-04-02 11:30:00', 3, 5, NULL, 1), (4, '2022-05-01 09:00:00', 4, 2, NULL, 2)",
    ),
    (
        "payment",
        "(1, 1, 1, 1, 2.99, '2022-02-24 22:53:30'), (2, 5, 2, 2, 0.99, '2022-03-24 10:00:00'), "
        "(3, 5, 1, 3, 5.99, '2022-04-02 11:30:00'), (4, 2, 2, 4, 4.99, '2022-05-01 09:00:00'), "
        "(5, 5, 1, NULL, 1.99, '2022-06-15 12:00:00')",
    ),
]

#: the months of ``payment``'s partitions on PostgreSQL
MONTHS = [f"2022_{month:02d}" for month in range(1, 8)]

RATINGS = ("G", "PG", "PG-13", "R", "NC-17")


@dataclass(frozen=True)
class Dialect:
    name: str

    @property
    def postgresql(self) -> bool:
        return self.name == "postgresql"

    @property
    def mysql(self) -> bool:
        return self.name in ("mysql", "mariadb")

    @property
    def sqlite(self) -> bool:
        return self.name == "sqlite"

    def types(self) -> dict[str, str]:
        listed = ", ".join(f"'{r}'" for r in RATINGS)
        return {
            "ts": "DATETIME" if self.mysql else "TIMESTAMP",
            "rating": (
                "mpaa_rating DEFAULT 'G'"
                if self.postgresql
                else f"ENUM({listed}) DEFAULT 'G'"
                if self.mysql
                else "VARCHAR(5) DEFAULT 'G'"
            ),
            "text": "TEXT",
        }


def _foreign_key(table: str, columns: str, referred: str, referred_columns: str, rule: str) -> str:
    return (
        f"CONSTRAINT {table}_{columns.replace(', ', '_')}_fkey FOREIGN KEY ({columns}) "
        f"REFERENCES {referred} ({referred_columns}) ON UPDATE CASCADE ON DELETE {rule}"
    )


def statements(dialect_name: str) -> list[str]:
    """The DDL and rows of the pagila-like schema, in order, for ``dialect_name``."""
    dialect = Dialect(dialect_name)
    types = dialect.types()
    out: list[str] = []
    if dialect.postgresql:
        listed = ", ".join(f"'{r}'" for r in RATINGS)
        out.append(f"CREATE TYPE mpaa_rating AS ENUM ({listed})")
    for table, columns in TABLES:
        own, primary, key = columns.partition(", PRIMARY KEY")
        body = ", ".join([own, LAST_UPDATE] + ([primary.lstrip(", ") + key] if key else []))
        body = body.format(**types)
        if dialect.sqlite:  # keys inline: SQLite cannot add them later (nor checks them now)
            keys = [_foreign_key(*fk) for fk in FOREIGN_KEYS if fk[0] == table]
            body = ", ".join([body, *keys])
        suffix = " PARTITION BY RANGE (payment_date)" if table == "payment" else ""
        out.append(f"CREATE TABLE {table} ({body}){suffix if dialect.postgresql else ''}")
    if dialect.postgresql:
        for month in MONTHS:
            year, number = month.split("_")
            end = f"{year}-{int(number) + 1:02d}-01"
            out.append(
                f"CREATE TABLE payment_p{month} PARTITION OF payment "
                f"FOR VALUES FROM ('{year}-{number}-01') TO ('{end}')"
            )
    for table, columns, *_ in FOREIGN_KEYS:
        out.append(f"CREATE INDEX idx_fk_{table}_{columns} ON {table} ({columns})")
    for name, table, columns, unique in INDEXES:
        out.append(f"CREATE {'UNIQUE ' if unique else ''}INDEX {name} ON {table} ({columns})")
    if dialect.sqlite:  # store and staff reference each other
        out.append("PRAGMA defer_foreign_keys = ON")
    for table, values in ROWS:
        names = [c.split()[0] for c in _columns(table)]
        out.append(f"INSERT INTO {table} ({', '.join(names)}) VALUES {values}")
    if not dialect.sqlite:  # the keys after the rows: store and staff reference each other
        for fk in FOREIGN_KEYS:
            out.append(f"ALTER TABLE {fk[0]} ADD {_foreign_key(*fk)}")
    for name, query in VIEWS:
        out.append(f"CREATE VIEW {name} AS {query}")
    return out


def _columns(table: str) -> list[str]:
    """The column definitions of ``table`` (not its primary key clause)."""
    pieces = [piece.strip() for piece in dict(TABLES)[table].split(", ")]
    return [p for p in pieces if not p.startswith("PRIMARY") and not p.split()[0].endswith(")")]


def tables(dialect_name: str) -> list[str]:
    """Every table created, partitions included."""
    names = [t for t, _ in TABLES]
    if Dialect(dialect_name).postgresql:
        names += [f"payment_p{month}" for month in MONTHS]
    return names


def create(engine: Engine) -> None:
    with engine.begin() as connection:
        _drop(connection)
        for statement in statements(engine.dialect.name):
            connection.exec_driver_sql(statement)


def drop(engine: Engine) -> None:
    with engine.begin() as connection:
        _drop(connection)


def _drop(connection: Connection) -> None:
    dialect = Dialect(connection.dialect.name)
    for name, _ in VIEWS:
        connection.exec_driver_sql(f"DROP VIEW IF EXISTS {name}")
    if dialect.mysql:
        connection.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
    elif dialect.sqlite:  # store and staff reference each other; no transaction is open
        connection.exec_driver_sql("PRAGMA foreign_keys = OFF")
    cascade = " CASCADE" if dialect.postgresql else ""
    for table, _ in reversed(TABLES):
        connection.exec_driver_sql(f"DROP TABLE IF EXISTS {table}{cascade}")
    if dialect.mysql:
        connection.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 1")
    elif dialect.sqlite:
        connection.exec_driver_sql("PRAGMA foreign_keys = ON")
    if dialect.postgresql:
        connection.exec_driver_sql("DROP TYPE IF EXISTS mpaa_rating")

-- The rules engine keeps zones, subjects, devices and victims in memory; every change to them is
-- announced on channel 'tether_world', so every worker reloads within a second whoever wrote it.
CREATE FUNCTION tether_world_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tether_world', TG_TABLE_NAME);
    RETURN NULL;
END $$;

CREATE TRIGGER zones_changed AFTER INSERT OR UPDATE OR DELETE ON zones
    FOR EACH STATEMENT EXECUTE FUNCTION tether_world_changed();
CREATE TRIGGER subjects_changed AFTER INSERT OR UPDATE OR DELETE ON subjects
    FOR EACH STATEMENT EXECUTE FUNCTION tether_world_changed();
CREATE TRIGGER devices_changed AFTER INSERT OR UPDATE OR DELETE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION tether_world_changed();
CREATE TRIGGER victims_changed AFTER INSERT OR UPDATE OR DELETE ON victims
    FOR EACH STATEMENT EXECUTE FUNCTION tether_world_changed();
CREATE TRIGGER jurisdictions_changed AFTER INSERT OR UPDATE OR DELETE ON jurisdictions
    FOR EACH STATEMENT EXECUTE FUNCTION tether_world_changed();

CREATE INDEX alerts_type_opened ON alerts (type, opened_at DESC);

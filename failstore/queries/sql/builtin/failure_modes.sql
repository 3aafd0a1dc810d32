-- name: failure_modes
-- description: Failure modes per target model and class, the analyses side by side: one row per
-- description: cause (a tag or concept value, column prefixes such as `attr_background=`
-- description: dropped) named by the top slices of the latest `failstore slices` run (label
-- description: grouping, holding on the evaluation split or not evaluated), the valid leaves of
-- description: the latest `failstore barlow` run, or the CES concepts of the latest
-- description: `failstore explain` run (a concept ranked in the top 3 of a mistake set with a
-- description: negative score: the images have it and it misleads; a positive score names its
-- description: absence, `not water`). `agree` counts the analyses that name the cause; rows where
-- description: they agree come first. Analyses that have not run contribute nothing.
-- description: slice_tags / slice_tag_source and leaf_number identify the slice and the leaf
-- description: (for links to their images).
-- param: model = NULL -- only this target model
-- param: class = NULL -- only this class (the images' label)
-- param: top = 5 -- slices and leaves considered per model and class (most important first)
WITH runs AS (
    SELECT r.analysis, arg_max(r.run_id, r.used_at) AS run_id
    FROM analysis_runs AS r
    GROUP BY r.analysis, r.run_key
),
slice_rows AS (
    SELECT
        s.model,
        s."class",
        s.tags,
        s.tag_source,
        s.description,
        s.error_rate,
        s.importance,
        row_number() OVER (PARTITION BY s.model, s."class" ORDER BY s.importance DESC) AS k
    FROM {{ table_or_empty(prime_slices) }} AS s
    WHERE s.run_id IN (SELECT run_id FROM runs WHERE analysis = 'slices')
        AND s."grouping" = 'label'
        AND s.holds IS NOT FALSE
),
slice_tags AS (
    SELECT model, "class", unnest(tags) AS tag, tags, tag_source, description, importance
    FROM slice_rows
    WHERE k <= $top
),
slice_causes AS (
    SELECT
        model,
        "class",
        regexp_replace(tag, '^[^=]*=', '') AS cause,
        arg_max(description, importance) AS slice,
        arg_max(tags, importance) AS slice_tags,
        arg_max(tag_source, importance) AS slice_tag_source,
        max(importance) AS slice_importance
    FROM slice_tags
    GROUP BY 1, 2, 3
),
leaf_rows AS (
    SELECT
        l.model,
        l."class",
        l.description_tags,
        l.leaf,
        l.description,
        l.importance,
        row_number() OVER (PARTITION BY l.model, l."class" ORDER BY l.importance DESC) AS k
    FROM {{ table_or_empty(barlow_tree_leaves) }} AS l
    WHERE l.run_id IN (SELECT run_id FROM runs WHERE analysis = 'barlow')
        AND l."grouping" = 'label'
        AND l.valid
),
leaf_tags AS (
    SELECT model, "class", unnest(description_tags) AS tag, leaf, description, importance
    FROM leaf_rows
    WHERE k <= $top
),
leaf_causes AS (
    SELECT
        model,
        "class",
        regexp_replace(tag, '^[^=]*=', '') AS cause,
        arg_max('leaf ' || CAST(leaf AS VARCHAR) || ': ' || description, importance) AS leaf,
        arg_max(leaf, importance) AS leaf_number
    FROM leaf_tags
    GROUP BY 1, 2, 3
),
concept_causes AS (
    SELECT
        c.model,
        c.label AS "class",
        CASE WHEN c.score < 0 THEN c.concept ELSE 'not ' || c.concept END AS cause,
        sum(c.images) AS concept_images,
        string_agg(DISTINCT c.label || ' -> ' || c.prediction, ', '
                   ORDER BY c.label || ' -> ' || c.prediction) AS sets
    FROM {{ table_or_empty(ces_sets) }} AS c
    WHERE c.run_id IN (SELECT run_id FROM runs WHERE analysis = 'explain')
        AND c.rank <= 3
    GROUP BY 1, 2, 3
),
keys AS (
    SELECT model, "class", cause FROM slice_causes
    UNION
    SELECT model, "class", cause FROM leaf_causes
    UNION
    SELECT model, "class", cause FROM concept_causes
)
SELECT
    k.model,
    k."class",
    k.cause,
    list_filter(
        ['slices', 'barlow', 'ces'],
        (m, i) -> [s.cause IS NOT NULL, l.cause IS NOT NULL, c.cause IS NOT NULL][i]
    ) AS methods,
    CAST(s.cause IS NOT NULL AS INTEGER) + CAST(l.cause IS NOT NULL AS INTEGER)
        + CAST(c.cause IS NOT NULL AS INTEGER) AS agree,
    s.slice,
    s.slice_tags,
    s.slice_tag_source,
    l.leaf,
    l.leaf_number,
    CASE WHEN c.cause IS NOT NULL THEN c.cause || ' (' || c.sets || ')' END AS concept,
    c.concept_images
FROM keys AS k
LEFT JOIN slice_causes AS s ON s.model = k.model AND s."class" = k."class" AND s.cause = k.cause
LEFT JOIN leaf_causes AS l ON l.model = k.model AND l."class" = k."class" AND l.cause = k.cause
LEFT JOIN concept_causes AS c
    ON c.model = k.model AND c."class" = k."class" AND c.cause = k.cause
WHERE ($model IS NULL OR k.model = $model)
    AND ($class IS NULL OR k."class" = $class)
ORDER BY k.model, k."class", agree DESC, s.slice_importance DESC NULLS LAST, c.concept_images DESC NULLS LAST, k.cause

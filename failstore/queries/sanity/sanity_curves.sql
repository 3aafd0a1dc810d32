-- name: sanity_curves
-- description: The similarity curves of the latest sanity runs (the paper's figures): per model,
-- description: test, method, step (the layer randomised at that step; 0 for the tests without
-- description: steps) and group, `images`: the number of image rows, every image compared,
-- description: whether or not its figures are defined; and the mean and standard error of each
-- description: figure over the images where it is defined (undefined, NaN, comparisons left
-- description: out: a figure's mean can stand on fewer images than `images`, and is NULL when
-- description: none is defined, as hog below 48 x 48 pixels). Step 0 of a randomisation test is
-- description: the trained model itself, 1 by definition, and is not stored.
-- param: model = NULL -- only this target model
-- param: test = NULL -- only this test
-- param: method = NULL -- only this attribution method
SELECT
    s.model,
    s.test,
    s.method,
    s.step,
    s.layer,
    s."group",
    count(*) AS images,
    avg(s.rank_abs) FILTER (WHERE NOT isnan(s.rank_abs)) AS rank_abs,
    stddev_samp(s.rank_abs) FILTER (WHERE NOT isnan(s.rank_abs))
        / sqrt(count(s.rank_abs) FILTER (WHERE NOT isnan(s.rank_abs))) AS rank_abs_sem,
    avg(s.rank_signed) FILTER (WHERE NOT isnan(s.rank_signed)) AS rank_signed,
    stddev_samp(s.rank_signed) FILTER (WHERE NOT isnan(s.rank_signed))
        / sqrt(count(s.rank_signed) FILTER (WHERE NOT isnan(s.rank_signed))) AS rank_signed_sem,
    avg(s.ssim) FILTER (WHERE NOT isnan(s.ssim)) AS ssim,
    stddev_samp(s.ssim) FILTER (WHERE NOT isnan(s.ssim))
        / sqrt(count(s.ssim) FILTER (WHERE NOT isnan(s.ssim))) AS ssim_sem,
    avg(s.ssim_range1) FILTER (WHERE NOT isnan(s.ssim_range1)) AS ssim_range1,
    stddev_samp(s.ssim_range1) FILTER (WHERE NOT isnan(s.ssim_range1))
        / sqrt(count(s.ssim_range1) FILTER (WHERE NOT isnan(s.ssim_range1))) AS ssim_range1_sem,
    avg(s.hog) FILTER (WHERE NOT isnan(s.hog)) AS hog,
    stddev_samp(s.hog) FILTER (WHERE NOT isnan(s.hog))
        / sqrt(count(s.hog) FILTER (WHERE NOT isnan(s.hog))) AS hog_sem
FROM sanity_scores AS s
WHERE s.run_id IN (
    SELECT arg_max(r.run_id, r.used_at)
    FROM analysis_runs AS r
    WHERE r.analysis = 'sanity'
    GROUP BY r.run_key
)
    AND ($model IS NULL OR s.model = $model)
    AND ($test IS NULL OR s.test = $test)
    AND ($method IS NULL OR s.method = $method)
GROUP BY s.model, s.test, s.method, s.step, s.layer, s."group"
ORDER BY s.model, s.test, s.method, s.step, s."group"
